"""The config file's bytes to plain data, refusing what would hurt later, cheaply.

`read_config_data(path)` answers a mapping or raises `ConfigFileError` with one problem,
already placed (`line 3, column 1: ...`, `byte 17: ...` or a field path); `settings.py` puts
the file name in front. What is refused, and why each bound is where it is:

- not UTF-8 (UTF-16, Latin-1, binary): the byte offset of the first bad byte is named. A UTF-8
  byte order mark is fine (editors on Windows write one).
- more than MAX_BYTES: a config of 5,000 targets is about 400 KB (read in 0.5 s).
- nesting deeper than MAX_DEPTH: composing nodes recurses per level and would end in
  RecursionError; the deepest real path (`targets[0].detection.fail_window[0]`) is 5 levels.
- more than MAX_NODES nodes, or as many once aliases are expanded (the "billion laughs": a few
  lines of anchors that expand to 10^9 values), or an alias inside its own anchor (a cycle).
  Counted while composing and on the composed nodes, before anything is built, so a bomb costs
  milliseconds and a huge flat list about a second.
- a key twice in one mapping (`targets:` twice would silently keep the last one). Keys merged
  in with `<<: *defaults` are defaults, not duplicates, as YAML says.
- an empty document (a save caught half-way, or only comments), and a top level that is not a
  mapping.

This module imports nothing from egresswatch: settings.py stands on it.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "ConfigFileError", "read_config_data"]

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 100_000  # 5,000 targets with 3 settings each are 35,000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_OTHER_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16: its mark starts with UTF-16 LE's
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class ConfigFileError(Exception):
    """A config file that cannot be read as settings; `str()` is the placed problem."""


def read_config_data(path: Path) -> dict[Any, Any]:
    """The top-level mapping of the YAML file at `path`. Raises ConfigFileError, never another
    exception: I/O, decoding and YAML problems are all translated here."""
    return parse_config_text(decode_config(_read_bytes(path)))


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigFileError(f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path with a NUL byte in it
        raise ConfigFileError(f"cannot read: {exc}") from None
    if len(data) > MAX_BYTES:
        raise ConfigFileError(f"larger than {MAX_BYTES // 1024} KiB: not a config file")
    return data


def decode_config(data: bytes) -> str:
    """UTF-8 text (a leading byte order mark dropped), or the offset of the first bad byte."""
    for bom, name in _OTHER_BOMS:
        if data.startswith(bom):
            raise ConfigFileError(f"byte 0: the file is {name} (byte order mark): save it as UTF-8")
    if (nul := data.find(b"\x00")) >= 0:  # valid UTF-8, but no text file has one
        raise ConfigFileError(f"byte {nul} (0x00): a NUL byte: a binary file, not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if data.startswith(codecs.BOM_UTF8) else 0)
        raise ConfigFileError(
            f"byte {offset} (0x{data[offset]:02x}): not UTF-8 text "
            "(Latin-1, UTF-16 or a binary file?): save it as UTF-8"
        ) from None


def parse_config_text(text: str) -> dict[Any, Any]:
    """The top-level mapping of one YAML document, within the bounds the module names."""
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(_yaml_problem(exc)) from None
    except (ValueError, OverflowError) as exc:
        # A scalar that looks like a value but is none, e.g. the date 2001-02-30.
        raise ConfigFileError(f"not a valid YAML value: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigFileError("the top level must be a mapping of settings")
    return data


def _load(text: str) -> object:
    loader = _BoundedLoader(text)  # refuses unprintable characters (NUL...) with their place
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigFileError("the file is empty: no settings (a save caught half-way?)")
        _check_size(node)
        _check_keys(loader, node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _PythonEvents(Reader, Scanner, Parser):
    """YAML events from the pure-Python parser, where PyYAML was built without libyaml."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)


# libyaml's parser is a loop, not a recursion, and 7 times faster than the Python one (0.5 s
# against 3.8 s for 5,000 targets); the nodes are composed in Python below, where the depth and
# the count are bounded before the next level is read.
def _event_source() -> type:
    try:
        from yaml._yaml import CParser
    except ImportError:  # PyYAML built without libyaml
        return _PythonEvents
    return CParser


_Events = _event_source()


class _BoundedLoader(Composer, _Events, SafeConstructor, Resolver):  # type: ignore[misc,valid-type]
    """A SafeLoader (libyaml's events when there) that refuses nesting deeper than MAX_DEPTH
    and more than MAX_NODES nodes while it composes them: before the recursion gets deep and
    before a huge file is read to its end."""

    def __init__(self, stream: str) -> None:
        _Events.__init__(self, stream)  # type: ignore[misc]
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        Composer.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
                mark = self.peek_event().start_mark
                where = f"line {mark.line + 1}, column {mark.column + 1}: "
                if self._depth > MAX_DEPTH:
                    raise ConfigFileError(f"{where}nested deeper than {MAX_DEPTH} levels")
                raise ConfigFileError(f"{where}more than {MAX_NODES} values")
            node: Node | None = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            # Problems are placed by where a node starts; its end mark (80 bytes, 5 nodes a
            # target) only raised the parse's peak, which the process's RSS keeps: 2 MiB at
            # 5,000 targets (docs/performance.md, "Issue 14: 5,000 targets under 150 MiB").
            node.end_mark = None
        return node


def _check_size(root: Node) -> None:
    """Refuse, with aliases expanded, more than MAX_NODES values or nesting deeper than
    MAX_DEPTH (an alias at depth 30 of an anchor 30 deep), or an alias in its own anchor.

    Each node is measured once (a memo by identity), so the cost is the parsed size, not the
    expanded one; an explicit stack, so a long chain of aliases cannot recurse deeply.
    """
    measured: dict[int, tuple[int, int]] = {}  # id -> (values, depth) below and with it
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            below = [measured[id(child)] for child in _children(node)]
            size = 1 + sum(values for values, _ in below)
            depth = 1 + max((deepest for _, deepest in below), default=0)
            if size > MAX_NODES:
                raise ConfigFileError(
                    f"{_at(node)}more than {MAX_NODES} values once aliases are expanded"
                )
            if depth > MAX_DEPTH:
                raise ConfigFileError(
                    f"{_at(node)}nested deeper than {MAX_DEPTH} levels once aliases are expanded"
                )
            measured[key] = (size, depth)
            continue
        if key in measured:
            continue
        if key in open_nodes:
            raise ConfigFileError(f"{_at(node)}an alias refers to the anchor it is inside of")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in measured)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_keys(loader: _BoundedLoader, node: Node, path: str, seen: set[int]) -> None:
    """Refuse a key given twice in one mapping, naming the field path and both lines."""
    if id(node) in seen or isinstance(node, ScalarNode):
        return
    seen.add(id(node))  # an aliased node is checked once (and the size check ruled out cycles)
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_keys(loader, item, f"{path}[{index}]", seen)
        return
    first: dict[Hashable, Node] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: its keys are defaults for this one
            _check_keys(loader, value_node, path, seen)
            continue
        key = loader.construct_object(key_node, deep=True)
        where = _key_path(path, key)
        if _hashable(key):
            if key in first:
                line = first[key].start_mark.line + 1
                raise ConfigFileError(
                    f"{where}: given twice (lines {line} and {key_node.start_mark.line + 1}): "
                    "only one can count, so neither does"
                )
            first[key] = key_node
        _check_keys(loader, value_node, where, seen)


def _key_path(path: str, key: object) -> str:
    """`path.key`, or `path['odd key']` for a key that is not a plain word (as settings.py)."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _hashable(key: object) -> bool:
    try:
        hash(key)
    except TypeError:
        return False  # a list or mapping as a key: the constructor refuses it by itself
    return True


def _at(node: Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}: "


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # an unprintable character, e.g. NUL
        return (
            f"position {exc.position}: not valid YAML: unacceptable character "
            f"#x{exc.character if isinstance(exc.character, int) else 0:04x}: {exc.reason}"
        )
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else str(problem)
    return f"{where}not valid YAML: {' '.join(text.split())}"  # one line
