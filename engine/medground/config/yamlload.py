"""YAML loading that keeps the line and column of every key and item.

Error messages must point at ``file:line:column``, so documents are composed into
PyYAML nodes first and the position of each path (a tuple of keys and list indices)
is recorded while the Python objects are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medground.config.errors import ConfigError, Problem

PathKey = tuple[str | int, ...]

# libyaml's parser (when PyYAML was built with it) gives the same nodes and marks, faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass
class LoadedYaml:
    """A parsed YAML document and the 1-based (line, column) of each path in it."""

    file: Path
    data: Any
    positions: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    text: str = ""

    def locate(self, path: PathKey) -> tuple[int | None, int | None]:
        """Return the position of ``path`` or of its nearest ancestor that has one."""
        probe = tuple(path)
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            probe = probe[:-1]
        return self.positions.get((), (None, None))

    def problem(self, path: PathKey, message: str) -> Problem:
        """Build a :class:`Problem` located at ``path``."""
        line, column = self.locate(path)
        key = ".".join(str(p) for p in path) if path else None
        return Problem(self.file, message, line, column, key)


def parse_yaml(text: str, file: Path) -> LoadedYaml:
    """Parse one YAML document, recording positions and rejecting duplicate keys.

    Raises:
        ConfigError: on a syntax error or a key that appears twice in one mapping.
    """
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        problem = f"{exc.problem or 'invalid YAML'}"
        if exc.context:
            problem = f"{exc.context}, {problem}"
        raise ConfigError(
            [
                Problem(
                    file,
                    f"YAML syntax error: {problem}; fix the indentation or quoting there",
                    line,
                    column,
                )
            ]
        ) from exc
    loaded = LoadedYaml(file=file, data=None, text=text)
    if node is None:
        loaded.positions[()] = (1, 1)
        return loaded
    problems: list[Problem] = []
    loaded.data = _build(node, (), loaded, problems)
    if problems:
        raise ConfigError(problems)
    return loaded


def load_yaml(path: Path) -> LoadedYaml:
    """Read and parse a YAML file (see :func:`parse_yaml`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError([Problem(path, "file not found; check the path")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(path, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")]
        ) from exc
    return parse_yaml(text, path)


def _build(node: yaml.Node, path: PathKey, loaded: LoadedYaml, problems: list[Problem]) -> Any:
    loaded.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key_value = _scalar(key_node)
            child = (*path, key_value)
            position = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key_value in result:
                first = loaded.positions.get(child, (None, None))[0]
                problems.append(
                    Problem(
                        loaded.file,
                        f"duplicate key '{key_value}' (first at line {first}); remove one of them",
                        *position,
                        ".".join(str(p) for p in child),
                    )
                )
                continue
            loaded.positions[child] = position
            result[key_value] = _build(value_node, child, loaded, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), loaded, problems) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        # A list or mapping used as a key: show it as the user wrote it, e.g. [255, 0, 0].
        return _key_text(node)
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    finally:
        _CONSTRUCTOR.constructed_objects.clear()
        _CONSTRUCTOR.recursive_objects.clear()


def _key_text(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "[" + ", ".join(_key_text(item) for item in node.value) + "]"
    if isinstance(node, yaml.MappingNode):
        pairs = (f"{_key_text(k)}: {_key_text(v)}" for k, v in node.value)
        return "{" + ", ".join(pairs) + "}"
    return str(_scalar(node))
