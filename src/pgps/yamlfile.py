"""Read a YAML file the way a parameter file must be read: strictly, and failing in one line.

PyYAML alone keeps the LAST of two equal keys without a word, recurses once per nesting level (a few
thousand ``[`` end in a RecursionError), lets aliases expand into exponentially many values, and reports
some problems over several lines. :func:`load_yaml` refuses all of that with one
:class:`~pgps.errors.PGPSError` line that names the file (and the line of the problem where YAML knows it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from pgps.errors import PGPSError

MAX_BYTES = 1 << 20  # a parameter file is a few KiB; a MiB is already not one
MAX_DEPTH = 32  # params.yaml nests 4 levels (grid.stages.train.cpus); PyYAML's recursion breaks near 300
MAX_VALUES = 100_000  # values after alias expansion ("billion laughs"); params.yaml has about 150


class _Refused(yaml.MarkedYAMLError):
    """A document PyYAML would accept but a parameter file must not contain."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and nesting deeper than MAX_DEPTH while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    # types-PyYAML declares ``anchor`` as a dict; PyYAML passes the anchor's name (or None)
    def compose_mapping_node(self, anchor: str | None) -> MappingNode:  # type: ignore[override]
        node = super().compose_mapping_node(anchor)  # type: ignore[arg-type]
        seen: dict[tuple[str, str], int] = {}
        for key, _value in node.value:
            if not isinstance(key, ScalarNode):
                continue  # a complex key: SafeConstructor refuses it (unhashable) or it is unique by structure
            ident = (key.tag, key.value)
            if ident in seen:
                raise _Refused(
                    problem=f"duplicate key {key.value!r} (first at line {seen[ident] + 1}; YAML keeps only the last)",
                    problem_mark=key.start_mark,
                )
            seen[ident] = key.start_mark.line
        return node


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with control characters escaped and cut to ``limit`` characters: safe for a one-line error."""
    escaped = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def _count_values(tree: Any) -> int:
    """Values in ``tree`` with every alias expanded; stops counting at MAX_VALUES + 1 (cycles too)."""
    count, stack = 0, [tree]
    while stack and count <= MAX_VALUES:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple | set):
            stack.extend(node)
    return count


def _yaml_problem(exc: Exception) -> str:
    """`` (line N): problem`` from PyYAML's (or our) complaint, on one line."""
    if isinstance(exc, yaml.reader.ReaderError):
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f" (character {exc.position + 1}): unacceptable character #x{code:04x}"
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}: {one_line(problem)}"


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``; ``source`` names it in the one-line error."""
    try:
        loader = _StrictLoader(text)
        try:
            tree = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise PGPSError(f"{source}: not valid YAML{_yaml_problem(exc)}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise PGPSError(f"{source}: not valid YAML: {one_line(str(exc))}") from None
    if _count_values(tree) > MAX_VALUES:
        raise PGPSError(f"{source}: more than {MAX_VALUES} values once YAML aliases are expanded")
    return tree


def load_yaml(path: Path) -> Any:
    """Read and parse ``path``; every failure is one PGPSError line starting with the path."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PGPSError(f"{path}: not found (run from the repository root, or pass --params)") from None
    except IsADirectoryError:
        raise PGPSError(f"{path}: is a directory, not a YAML file") from None
    except OSError as exc:
        raise PGPSError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise PGPSError(f"{path}: larger than {MAX_BYTES} bytes; not a parameter file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PGPSError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    return parse_yaml(text, str(path))
