"""Reading config YAML safely: UTF-8 only, duplicate keys rejected, nesting and size bounded.

PyYAML's SafeLoader builds plain data and never runs code, but it silently keeps the last of
two equal keys, recurses once per nesting level (a 50,000-deep file raises RecursionError) and
expands aliases by reference (a "billion laughs" file is tiny but unbounded once walked). This
loader turns each of these into a YamlFileError naming the file, the line and the culprit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from autodiff.errors import ModelcutError

MAX_BYTES = 16 * 2**20        # a config or cluster file
MAX_DEPTH = 64                # nesting levels of mappings and lists
MAX_EXPANDED_NODES = 1_000_000  # scalars, lists and mappings once aliases are expanded
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ModelcutError, ValueError):
    """A config file cannot be read as YAML; the message names the file and the problem."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting depth and raises on a mapping key given twice."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:   # unhashable: SafeConstructor reports it
                    continue
                if first is not key_node.start_mark:
                    raise ConstructorError(None, None, f"duplicate key {key!r} (first given at "
                                           f"line {first.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The YAML document in `path` as plain data; YamlFileError for anything wrong with it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise YamlFileError(f"{path}: larger than {MAX_BYTES // 2**20} MiB, too big for a config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise YamlFileError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line "
                            f"{line}); save the file as UTF-8") from None
    loader = None
    try:
        loader = StrictLoader(text)   # the reader rejects control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise YamlFileError(f"{path}: not valid YAML{where}: {problem}") from None
    except YamlFileError:
        raise
    except (ValueError, OverflowError) as exc:   # a 5000-digit integer, a date like 2024-13-45
        raise YamlFileError(f"{path}: not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _children(node) -> list:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root, path: Path) -> None:
    """Raise YamlFileError when aliases refer to themselves, or expand the document beyond
    MAX_EXPANDED_NODES values or MAX_DEPTH levels (iterative: no recursion on hostile input)."""
    done: dict[int, tuple[int, int]] = {}   # id -> (expanded size, depth)
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            facts = [done[id(c)] for c in _children(node)]
            size = min(1 + sum(f[0] for f in facts), MAX_EXPANDED_NODES + 1)
            depth = 1 + max((f[1] for f in facts), default=0)
            if size > MAX_EXPANDED_NODES or depth > MAX_DEPTH:
                what = (f"expand to more than {MAX_EXPANDED_NODES:,} values"
                        if size > MAX_EXPANDED_NODES else f"nest deeper than {MAX_DEPTH} levels")
                raise YamlFileError(f"{path}: its aliases {what}, too many for a config")
            done[key] = (size, depth)
        elif key in open_nodes:
            raise YamlFileError(f"{path}: an alias at line {node.start_mark.line + 1} refers "
                                "to a list or mapping that contains it")
        elif key not in done:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in done)
