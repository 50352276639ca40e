"""Validate a parsed YAML document against its JSON Schema and its pydantic model.

The JSON Schemas in ``schemas/`` are generated from the pydantic models (see
``medground.config.schemas``), so both checks enforce one contract. JSON Schema gives
precise, located messages for structure (unknown keys, wrong types, invalid choices);
pydantic then runs the cross-field checks and builds the typed object.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, TypeVar

import jsonschema
import pydantic

from medground.config.errors import ConfigError, Problem, choices_text, suggest
from medground.config.yamlload import LoadedYaml, PathKey

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)

_JSON_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def validate_document(
    loaded: LoadedYaml,
    schema: dict[str, Any],
    model: type[ModelT],
    context: dict[str, Any] | None = None,
) -> ModelT:
    """Check ``loaded`` against ``schema`` then build ``model`` from it.

    Raises:
        ConfigError: listing every problem found, each with file, line, column and key.
    """
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[Problem] = []
    reporter = _SchemaReporter(loaded, schema)
    for error in validator.iter_errors(loaded.data):
        problems.extend(reporter.problems(error))
    if problems:
        raise ConfigError(_unique(problems))
    try:
        return model.model_validate(loaded.data, context=context)
    except pydantic.ValidationError as exc:
        raise ConfigError(_unique(_pydantic_problems(loaded, exc))) from exc


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    result = []
    for problem in sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.message)):
        if str(problem) not in seen:
            seen.add(str(problem))
            result.append(problem)
    return result


class _SchemaReporter:
    """Turns JSON Schema errors into located problems with valid choices and hints."""

    def __init__(self, loaded: LoadedYaml, root: dict[str, Any]):
        self.loaded = loaded
        self.root = root

    def problems(self, error: jsonschema.ValidationError) -> Iterator[Problem]:
        loaded = self.loaded
        path: PathKey = tuple(error.absolute_path)
        instance = error.instance
        schema = error.schema if isinstance(error.schema, dict) else {}

        if error.validator in ("oneOf", "anyOf"):
            yield from self._union_problems(error, path)
            return

        if error.validator == "additionalProperties" and isinstance(instance, dict):
            valid = list(schema.get("properties", {}))
            for key in instance:
                if key not in valid:
                    yield loaded.problem(
                        (*path, key),
                        f"unknown key '{key}'; {suggest(key, valid)}"
                        f"valid keys: {choices_text(valid)}",
                    )
            return

        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            yield loaded.problem(path, f"missing required key '{missing}'; add it")
            return

        if error.validator in ("enum", "const"):
            valid = schema.get("enum", [schema.get("const")])
            yield loaded.problem(
                path,
                f"invalid value {instance!r}; {suggest(instance, map(str, valid))}"
                f"valid choices: {choices_text(valid)}",
            )
            return

        if error.validator == "type":
            expected = error.validator_value
            names = [expected] if isinstance(expected, str) else list(expected)
            wanted = " or ".join(_JSON_TYPES.get(n, n) for n in names)
            yield loaded.problem(path, f"expected {wanted}, got {instance!r}")
            return

        if error.validator == "pattern":
            yield loaded.problem(
                path,
                f"invalid value {instance!r}: it must match the pattern {error.validator_value!r}",
            )
            return

        yield loaded.problem(path, f"invalid value {instance!r}: {error.message}")

    def _union_problems(
        self, error: jsonschema.ValidationError, path: PathKey
    ) -> Iterator[Problem]:
        """Report the errors of the union branch the document meant, chosen by its tag."""
        loaded = self.loaded
        schema = error.schema if isinstance(error.schema, dict) else {}
        discriminator = schema.get("discriminator", {}).get("propertyName")
        branches = schema.get(error.validator, [])
        instance = error.instance

        if discriminator and isinstance(instance, dict):
            tags = self._branch_tags(branches, discriminator)
            tag = instance.get(discriminator, self._default_tag(branches, discriminator))
            if tag not in tags:
                shown = f"invalid value {tag!r}" if tag is not None else "missing key"
                yield loaded.problem(
                    (*path, discriminator) if tag is not None else path,
                    f"{shown} for '{discriminator}'; {suggest(tag, tags)}"
                    f"valid choices: {choices_text(tags)}",
                )
                return
            index = tags.index(tag)
            for sub in error.context or []:
                if sub.relative_schema_path and sub.relative_schema_path[0] == index:
                    yield from self.problems(sub)
            return

        # Without a tag, report the branch that got furthest (fewest errors).
        by_branch: dict[int, list[jsonschema.ValidationError]] = {}
        for sub in error.context or []:
            if sub.relative_schema_path:
                by_branch.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
        if not by_branch:
            yield loaded.problem(path, f"invalid value {instance!r}: {error.message}")
            return
        best = min(by_branch.values(), key=len)
        for sub in best:
            yield from self.problems(sub)

    def _branch_tags(self, branches: list[dict[str, Any]], prop: str) -> list[str]:
        tags = []
        for branch in branches:
            resolved = branch
            if "$ref" in branch:
                resolved = self._resolve_local_ref(branch["$ref"])
            value = resolved.get("properties", {}).get(prop, {})
            tags.append(value.get("const", (value.get("enum") or [None])[0]))
        return tags

    def _default_tag(self, branches: list[dict[str, Any]], prop: str) -> str | None:
        """Return the tag of the branch that applies when ``prop`` is left out, if any."""
        for branch, tag in zip(branches, self._branch_tags(branches, prop), strict=True):
            resolved = self._resolve_local_ref(branch["$ref"]) if "$ref" in branch else branch
            if prop not in resolved.get("required", []):
                return tag
        return None

    def _resolve_local_ref(self, ref: str) -> dict[str, Any]:
        node: Any = self.root
        for part in ref.lstrip("#/").split("/"):
            node = node.get(part, {})
        return node


def _pydantic_problems(loaded: LoadedYaml, exc: pydantic.ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Discriminated unions put the tag into the location: drop it to get the YAML path.
        path = _yaml_path(loaded.data, loc)
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
            if not path:
                path = _message_path(loaded.data, message)
        elif err["type"] == "extra_forbidden":
            message = f"unknown key '{path[-1]}'; remove it or check its spelling"
        else:
            message = f"invalid value {err.get('input')!r}: {message}"
        problems.append(loaded.problem(path, message))
    return problems


# A cross-field check names the key it is about first: "masks.0 names class 'kyst', ...".
_LEADING_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*)\b")
_QUOTED = re.compile(r"'([^']+)'")


def _message_path(data: Any, message: str) -> PathKey:
    """Return the document path that a model-level error message starts with, if any.

    When the message also quotes a value that occurs under that path (a class name in a
    label map, say), the path of that value is returned, so the error points at its line.
    """
    match = _LEADING_KEY.match(message)
    if match is None:
        return ()
    loc = tuple(int(part) if part.isdigit() else part for part in match.group(1).split("."))
    path = _yaml_path(data, loc)
    if len(path) != len(loc):
        return ()
    node = data
    for part in path:
        node = node[part]
    for quoted in _QUOTED.findall(message[match.end() :]):
        found = _find_value(node, quoted)
        if found is not None:
            return (*path, *found)
    return path


def _find_value(node: Any, value: str) -> PathKey | None:
    """Return the path, below ``node``, of the first scalar equal to ``value``."""
    if isinstance(node, dict):
        items: Iterator[tuple[Any, Any]] = iter(node.items())
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return () if str(node) == value else None
    for key, child in items:
        found = _find_value(child, value)
        if found is not None:
            return (key, *found)
    return None


def _yaml_path(data: Any, loc: tuple[Any, ...]) -> PathKey:
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str):
            # A union tag or an alias: skip parts that are not keys of the document.
            if part in ("class_",) and "class" in node:
                path.append("class")
                node = node["class"]
            continue
    return tuple(path)
