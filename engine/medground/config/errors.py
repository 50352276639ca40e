"""Errors raised while loading declarative files, located to file, line and column."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One problem in a declarative file, with its 1-based line and column when known."""

    file: Path
    message: str
    line: int | None = None
    column: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(Exception):
    """One or more problems in manifests, rule files or templates."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def suggest(value: object, choices: Iterable[str]) -> str:
    """Return a "did you mean 'x'?" hint naming the nearest valid choice, or ''."""
    matches = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'? " if matches else ""


def choices_text(choices: Iterable[object], limit: int = 30) -> str:
    """Format valid choices for an error message, sorted and bounded."""
    items = sorted(str(c) for c in choices)
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", … ({len(items) - limit} more)"
    return text
