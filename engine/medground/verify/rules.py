"""The rule engine: YAML rules compiled to polars expressions, evaluated in one pass.

Rule files load in the order a manifest lists them. A rule id may be defined once across
all files; a later file changes an earlier rule only through ``overrides`` (disable it,
change its severity, condition or message), so precedence is the file order and every
change is explicit. A ``require`` or ``applies_when`` that evaluates to null counts as
false: a rule that cannot confirm a sample rejects it (use COALESCE to decide otherwise).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from medground.config.errors import ConfigError, Problem, choices_text, suggest
from medground.config.rules import RuleExample, RuleFile, RuleSpec
from medground.config.validation import validate_document
from medground.config.yamlload import LoadedYaml, load_yaml
from medground.resources import load_schema, resource_dir

# Importing these modules registers the claim and evidence columns that rules may name.
from medground.verify import claims as _claims  # noqa: F401
from medground.verify import evidence as _evidence  # noqa: F401
from medground.verify.columns import SAMPLE_COLUMNS, table_schema

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its compiled expressions and the file it came from."""

    spec: RuleSpec
    file: Path
    line: int | None
    require: pl.Expr
    applies_when: pl.Expr | None
    message_fields: tuple[str, ...]

    @property
    def id(self) -> str:
        """The rule id."""
        return self.spec.id


@dataclass
class RuleSet:
    """The rules in force for one run, in evaluation order, with their examples."""

    rules: list[CompiledRule] = field(default_factory=list)
    examples: list[tuple[Path, int | None, RuleExample]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def by_id(self, rule_id: str) -> CompiledRule | None:
        """Return the rule with this id, or None."""
        return next((r for r in self.rules if r.id == rule_id), None)


def compile_condition(
    text: str, loaded: LoadedYaml, where: tuple[str | int, ...], rule_id: str
) -> pl.Expr:
    """Compile one SQL condition, checking every column it names.

    Raises:
        ConfigError: for a SQL syntax error or an unknown column.
    """
    try:
        expr = pl.sql_expr(text)
        names = expr.meta.root_names()
    except Exception as exc:  # polars raises several error types for bad SQL
        raise ConfigError(
            [loaded.problem(where, f"rule {rule_id}: invalid SQL condition {text!r}: {exc}")]
        ) from exc
    unknown = [n for n in names if n not in SAMPLE_COLUMNS]
    if unknown:
        name = unknown[0]
        raise ConfigError(
            [
                loaded.problem(
                    where,
                    f"rule {rule_id}: unknown column '{name}' in {text!r}; "
                    f"{suggest(name, SAMPLE_COLUMNS)}"
                    f"available columns: {choices_text(SAMPLE_COLUMNS, limit=200)}",
                )
            ]
        )
    return expr


def _message_fields(
    text: str, loaded: LoadedYaml, where: tuple[str | int, ...], rule_id: str
) -> tuple[str, ...]:
    try:
        parsed = [(f, spec) for _, f, spec, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ConfigError(
            [loaded.problem(where, f"rule {rule_id}: invalid message: {exc}")]
        ) from exc
    fields = [name for name, _ in parsed]
    for name, spec in parsed:
        if spec:
            try:
                format(0.5, spec)
            except ValueError as exc:
                raise ConfigError(
                    [loaded.problem(where, f"rule {rule_id}: invalid format '{{{name}:{spec}}}' "
                                    f"({exc}); use a number format such as '.1%' or '.2f'")]
                ) from exc
    for name in fields:
        if name not in SAMPLE_COLUMNS:
            raise ConfigError(
                [
                    loaded.problem(
                        where,
                        f"rule {rule_id}: message names unknown column '{{{name}}}'; "
                        f"{suggest(name, SAMPLE_COLUMNS)}use plain column names",
                    )
                ]
            )
    return tuple(fields)


def load_rules(paths: Sequence[Path]) -> RuleSet:
    """Load rule files in order into one :class:`RuleSet`.

    Raises:
        ConfigError: listing the problems of the first failing file, each with file,
            line and rule id.
    """
    ruleset = RuleSet()
    origins: dict[str, tuple[Path, int | None]] = {}
    schema = load_schema("rules")
    for path in paths:
        loaded = load_yaml(Path(path))
        if loaded.data is None:
            raise ConfigError([Problem(Path(path), "empty rule file; add a 'rules:' list")])
        try:
            document = validate_document(loaded, schema, RuleFile)
        except ConfigError as exc:
            raise ConfigError([_name_rule(loaded, p) for p in exc.problems]) from exc
        problems: list[Problem] = []
        for index, spec in enumerate(document.rules):
            where = ("rules", index)
            line = loaded.locate(where)[0]
            if spec.id in origins:
                first, first_line = origins[spec.id]
                problems.append(
                    loaded.problem(
                        (*where, "id"),
                        f"duplicate rule id '{spec.id}', first defined in {first}:{first_line}; "
                        "rename it, or change the first one through 'overrides'",
                    )
                )
                continue
            try:
                ruleset.rules.append(_compile(spec, loaded, where, line))
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            origins[spec.id] = (Path(path), line)
        for index, override in enumerate(document.overrides):
            where = ("overrides", index)
            position = next((i for i, r in enumerate(ruleset.rules) if r.id == override.id), None)
            if position is None:
                problems.append(
                    loaded.problem(
                        (*where, "id"),
                        f"override of unknown rule '{override.id}'; "
                        f"{suggest(override.id, [r.id for r in ruleset.rules])}"
                        "rules must be loaded from an earlier file",
                    )
                )
                continue
            if not override.enabled:
                del ruleset.rules[position]
                continue
            old = ruleset.rules[position]
            changes = {
                k: v
                for k, v in override.model_dump(exclude={"id", "enabled"}).items()
                if v is not None
            }
            spec = old.spec.model_copy(update=changes)
            try:
                ruleset.rules[position] = _compile(spec, loaded, where, loaded.locate(where)[0])
            except ConfigError as exc:
                problems.extend(exc.problems)
        for index, example in enumerate(document.examples):
            where = ("examples", index)
            unknown = [k for k in example.row if k not in SAMPLE_COLUMNS]
            if unknown:
                problems.append(
                    loaded.problem(
                        (*where, "row", unknown[0]),
                        f"example uses unknown column '{unknown[0]}'; "
                        f"{suggest(unknown[0], SAMPLE_COLUMNS)}",
                    )
                )
            ruleset.examples.append((Path(path), loaded.locate(where)[0], example))
        if problems:
            raise ConfigError(problems)
        ruleset.files.append(Path(path))
    return ruleset


def _name_rule(loaded: LoadedYaml, problem: Problem) -> Problem:
    """Prefix a schema problem inside ``rules[i]`` or ``overrides[i]`` with that rule's id."""
    parts = (problem.key or "").split(".")
    if len(parts) < 2 or parts[0] not in ("rules", "overrides") or not parts[1].isdigit():
        return problem
    items = loaded.data.get(parts[0]) if isinstance(loaded.data, dict) else None
    index = int(parts[1])
    if not isinstance(items, list) or index >= len(items) or not isinstance(items[index], dict):
        return problem
    rule_id = items[index].get("id")
    if rule_id is None:
        return problem
    return replace(problem, message=f"rule {rule_id}: {problem.message}")


def _compile(
    spec: RuleSpec, loaded: LoadedYaml, where: tuple[str | int, ...], line: int | None
) -> CompiledRule:
    require = compile_condition(spec.require, loaded, (*where, "require"), spec.id)
    applies = None
    if spec.applies_when:
        applies = compile_condition(spec.applies_when, loaded, (*where, "applies_when"), spec.id)
    fields = _message_fields(spec.message, loaded, (*where, "message"), spec.id)
    return CompiledRule(spec, loaded.file, line, require, applies, fields)


def _verdict_columns(rules: Sequence[CompiledRule]) -> list[pl.Expr]:
    columns = []
    for index, rule in enumerate(rules):
        applies = pl.lit(True) if rule.applies_when is None else rule.applies_when.fill_null(False)
        holds = rule.require.fill_null(False)
        columns.append(applies.alias(f"__applies_{index}"))
        columns.append((applies & ~holds).alias(f"__fired_{index}"))
    return columns


@dataclass
class RuleOutcome:
    """Per sample: the rules that fired, split by severity, with rendered messages."""

    rejected_by: list[list[tuple[str, str]]]
    warned_by: list[list[tuple[str, str]]]
    evaluated: list[int]


def evaluate(ruleset: RuleSet, samples: pl.DataFrame) -> RuleOutcome:
    """Evaluate every rule over every sample in one vectorised pass."""
    height = samples.height
    rejected: list[list[tuple[str, str]]] = [[] for _ in range(height)]
    warned: list[list[tuple[str, str]]] = [[] for _ in range(height)]
    if not ruleset.rules or height == 0:
        return RuleOutcome(rejected, warned, [0] * height)

    verdicts = samples.select(_verdict_columns(ruleset.rules))
    evaluated = (
        verdicts.select(pl.sum_horizontal(pl.col(r"^__applies_\d+$").cast(pl.Int64)))
        .to_series()
        .to_list()
    )
    for index, rule in enumerate(ruleset.rules):
        fired_rows = verdicts.get_column(f"__fired_{index}").arg_true().to_list()
        if not fired_rows:
            continue
        needed = list(dict.fromkeys(rule.message_fields))
        values = samples[fired_rows].select(needed).to_dicts() if needed else [{}] * len(fired_rows)
        target = rejected if rule.spec.severity == "reject" else warned
        for row, fields in zip(fired_rows, values, strict=True):
            message = render_message(rule.spec.message, fields)
            target[row].append((rule.id, message))
    return RuleOutcome(rejected, warned, evaluated)


class _MessageFormatter(string.Formatter):
    """Fills ``{column}`` with a readable value and ``{column:spec}`` with ``format``."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec and isinstance(value, int | float) and not isinstance(value, bool):
            return format(value, format_spec)
        return _show(value)


_FORMATTER = _MessageFormatter()


def render_message(template: str, values: dict[str, Any]) -> str:
    """Fill a rule message with the values of one sample row."""
    return _FORMATTER.format(template, **values)


def _show(value: Any) -> str:
    if isinstance(value, float):
        shown = f"{value:.4g}"
        # 0.99996 must not read as 1: keep digits until the shown value differs from a
        # round number whenever the value itself does.
        if float(shown) != value and float(shown) == round(value):
            shown = f"{value:.6g}"
        return shown
    return "null" if value is None else str(value)


@dataclass(frozen=True)
class ExampleResult:
    """The outcome of one rule example."""

    file: Path
    line: int | None
    rule_id: str
    expected: str
    actual: str
    note: str | None

    @property
    def ok(self) -> bool:
        """True when the rule gave the expected verdict."""
        return self.expected == self.actual


def rule_verdicts(ruleset: RuleSet, sample: pl.DataFrame) -> list[tuple[CompiledRule, str, str]]:
    """Return each rule's verdict on a one-row sample table: pass, fail or skip.

    The third item is the rule's rendered message for a failing row, else ''.
    """
    if sample.height != 1:
        raise ValueError(f"rule_verdicts needs exactly one sample row, got {sample.height}")
    verdicts = sample.select(_verdict_columns(ruleset.rules)).row(0)
    results = []
    for index, rule in enumerate(ruleset.rules):
        applies, fired = verdicts[2 * index], verdicts[2 * index + 1]
        if not applies:
            results.append((rule, "skip", ""))
            continue
        if not fired:
            results.append((rule, "pass", ""))
            continue
        fields = sample.select(list(dict.fromkeys(rule.message_fields))).row(0, named=True)
        message = render_message(rule.spec.message, fields)
        results.append((rule, "fail", message))
    return results


# Files in rules/ that are not rule files.
NON_RULE_FILES = ("cues.yaml", "lexicon.yaml")


def builtin_rule_files() -> list[Path]:
    """Return the built-in rule files in name order (cue and lexicon files excluded)."""
    folder = resource_dir("rules")
    return sorted(p for p in folder.glob("*.yaml") if p.name not in NON_RULE_FILES)


def example_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Build a sample table from partial rows, filling other columns with neutral defaults."""
    full = [
        {name: row.get(name, col.default) for name, col in SAMPLE_COLUMNS.items()} for row in rows
    ]
    return pl.DataFrame(full, schema=table_schema(), orient="row")


def run_examples(ruleset: RuleSet) -> list[ExampleResult]:
    """Evaluate each example row against its rule.

    Examples of rules that a later file disabled are reported as 'disabled'.
    """
    results = []
    for file, line, example in ruleset.examples:
        rule = ruleset.by_id(example.rule)
        if rule is None:
            results.append(
                ExampleResult(file, line, example.rule, example.expect, "disabled", example.note)
            )
            continue
        frame = example_frame([example.row])
        verdict = frame.select(_verdict_columns([rule]))
        if not verdict.item(0, 0):
            actual = "skip"
        else:
            actual = "fail" if verdict.item(0, 1) else "pass"
        results.append(ExampleResult(file, line, rule.id, example.expect, actual, example.note))
    return results
