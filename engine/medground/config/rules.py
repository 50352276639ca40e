"""Declarative verification rules (``rules/*.yaml``).

A rule states a condition every sample it applies to must meet, as a SQL expression
over the sample table's columns. Rules are compiled to polars expressions when their
file loads, so an unknown column or a syntax error is reported before any image runs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medground.config.manifest import StrictModel

RULE_ID = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"


class RuleSpec(StrictModel):
    """One rule: where it applies, what it requires, and what to say when it fails."""

    id: str = Field(pattern=RULE_ID, description="unique id, '<file topic>.<name>'")
    description: str = Field(min_length=1)
    applies_when: str | None = Field(
        None, description="SQL condition selecting the samples the rule checks (default: all)"
    )
    require: str = Field(description="SQL condition every checked sample must meet")
    severity: Literal["reject", "warn"] = "reject"
    message: str = Field(
        description="message for a failing sample; {column} inserts that column's value"
    )


class RuleExample(StrictModel):
    """A small sample row with the verdict one rule must give it."""

    rule: str = Field(pattern=RULE_ID)
    expect: Literal["pass", "fail", "skip"] = Field(
        description="pass: the rule holds; fail: it fires; skip: applies_when excludes the row"
    )
    row: dict[str, Any] = Field(description="column values; other columns take neutral defaults")
    note: str | None = None


class RuleOverride(StrictModel):
    """A change a rule file makes to a rule loaded from an earlier file."""

    id: str = Field(pattern=RULE_ID)
    enabled: bool = True
    severity: Literal["reject", "warn"] | None = None
    require: str | None = None
    applies_when: str | None = None
    message: str | None = None


class RuleFile(StrictModel):
    """A rule file: rules, overrides of earlier rules, and examples."""

    version: int = 1
    description: str | None = None
    rules: list[RuleSpec] = Field(default_factory=list)
    overrides: list[RuleOverride] = Field(default_factory=list)
    examples: list[RuleExample] = Field(default_factory=list)
