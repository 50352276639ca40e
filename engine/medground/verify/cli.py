"""``mgr rules``: test, list and explain verification rules without writing Python."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import polars as pl
import pyarrow.parquet as pq

from medground.config.errors import ConfigError
from medground.outputs import RULE_FILES_KEY
from medground.verify.columns import SAMPLE_COLUMNS
from medground.verify.rules import (
    RuleSet,
    builtin_rule_files,
    example_frame,
    load_rules,
    rule_verdicts,
    run_examples,
)

logger = logging.getLogger(__name__)

_FILES = click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))


def _load(files: tuple[Path, ...]) -> RuleSet:
    """Load ``files`` in order (default: the built-in rule files), or exit with the problems."""
    paths = list(files) or builtin_rule_files()
    try:
        return load_rules(paths)
    except ConfigError as exc:
        click.echo(f"invalid rule file:\n{exc}", err=True)
        sys.exit(2)


@click.group("rules")
def rules_group() -> None:
    """Test, list and explain the verification rules (rules/*.yaml)."""


@rules_group.command("test")
@_FILES
def test_rules(files: tuple[Path, ...]) -> None:
    """Run every example of the rule FILES (default: all built-in rule files).

    Files load in the given order, so a file that overrides a shared rule comes after it.
    Exits with status 1 when an example gets another verdict than it expects.
    """
    ruleset = _load(files)
    results = run_examples(ruleset)
    failed = [r for r in results if not r.ok]
    for result in failed:
        note = f" ({result.note})" if result.note else ""
        click.echo(
            f"{result.file}:{result.line}: {result.rule_id}: expected {result.expected}, "
            f"got {result.actual}{note}",
            err=True,
        )
    untested = [
        rule.id
        for rule in ruleset.rules
        if {"pass", "fail"} - {r.expected for r in results if r.rule_id == rule.id}
    ]
    for rule_id in untested:
        click.echo(f"note: rule {rule_id} lacks a passing or a failing example", err=True)
    names = ", ".join(p.name for p in ruleset.files)
    if failed:
        click.echo(f"{len(failed)} of {len(results)} examples failed in {names}", err=True)
        sys.exit(1)
    click.echo(f"{len(results)} examples passed for {len(ruleset.rules)} rules in {names}")


@rules_group.command("list")
@_FILES
def list_rules(files: tuple[Path, ...]) -> None:
    """Show each rule of FILES with its severity, condition and description."""
    ruleset = _load(files)
    for rule in ruleset.rules:
        spec = rule.spec
        click.echo(f"{spec.id}  [{spec.severity}]  {rule.file.name}:{rule.line}")
        click.echo(f"    {spec.description}")
        click.echo(f"    applies when: {spec.applies_when or '(every sample)'}")
        click.echo(f"    requires:     {' '.join(spec.require.split())}")


@rules_group.command("columns")
def list_columns() -> None:
    """List the sample-table columns that rules can use, with type, meaning and example default."""
    width = max(len(name) for name in SAMPLE_COLUMNS)
    for name, column in SAMPLE_COLUMNS.items():
        dtype = column.dtype() if isinstance(column.dtype, type) else column.dtype
        click.echo(f"{name:<{width}}  {str(dtype):<8}  {column.description}")


@rules_group.command("explain")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("sample_id")
@click.option(
    "--rules",
    "rule_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Rule file to evaluate instead of the run's own (repeat for several, in order).",
)
def explain(run_dir: Path, sample_id: str, rule_files: tuple[Path, ...]) -> None:
    """Show the columns of SAMPLE_ID in RUN_DIR and each rule's verdict on it.

    RUN_DIR is the folder 'mgr run' wrote (OUT/<dataset>); SAMPLE_ID is a record id such
    as 'kvasir-seg/<case>/t0/q0', accepted or rejected.
    """
    path = run_dir / "samples.parquet"
    if not path.is_file():
        click.echo(
            f"{path}: not found; rerun 'mgr run' with this engine version to write it", err=True
        )
        sys.exit(2)
    table = pl.read_parquet(path)
    row = table.filter(pl.col("sample_id") == sample_id)
    if row.height == 0:
        ids = table.get_column("sample_id").head(5).to_list()
        click.echo(
            f"{path}: no sample '{sample_id}' among {table.height}; ids look like: "
            f"{', '.join(ids)}",
            err=True,
        )
        sys.exit(2)
    if not rule_files:
        metadata = pq.read_schema(path).metadata or {}
        rule_files = tuple(Path(p) for p in json.loads(metadata.get(RULE_FILES_KEY, b"[]")))
    ruleset = _load(rule_files)

    values = row.row(0, named=True)
    click.echo(f"sample {sample_id}")
    fired = values.get("rules_fired") or "none"
    click.echo(f"recorded verdict: {values.get('rules_verdict')}; fired: {fired}")
    click.echo("")
    click.echo("columns:")
    width = max(len(name) for name in SAMPLE_COLUMNS)
    for name in SAMPLE_COLUMNS:
        click.echo(f"  {name:<{width}}  {values.get(name)!r}")
    click.echo("")
    click.echo("rules:")
    # Columns this engine knows but the run did not write take neutral defaults.
    known = {k: v for k, v in values.items() if k in SAMPLE_COLUMNS}
    frame = example_frame([known])
    missing = [n for n in SAMPLE_COLUMNS if n not in values]
    if missing:
        click.echo(f"  note: the run did not write {', '.join(missing)}; defaults used", err=True)
    for rule, verdict, message in rule_verdicts(ruleset, frame):
        suffix = f": {message}" if message else ""
        click.echo(f"  {verdict:<4}  {rule.id} [{rule.spec.severity}]{suffix}")


__all__ = ["rules_group"]
