"""Read the accepted records and the reviewable rejected candidates of a run folder.

A run folder is ``<out>/<dataset>/`` as written by ``mgr run``: ``records.jsonl`` contains
accepted records (``schemas/record.schema.json``), ``rejected.parquet`` the rejected
candidates. Only rejected rows that carry ``query``, ``image_path`` and ``targets_json``
can be reviewed; rejections before synthesis have no query and are not sampled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from jsonschema import Draft202012Validator

from medground.audit._files import sha256_file
from medground.audit.models import ItemKind
from medground.resources import load_schema

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
REJECTED_FILE = "rejected.parquet"
REVIEWABLE_REJECTED_COLUMNS = ("query", "image_path", "targets_json")


class AuditInputError(ValueError):
    """An input file of the audit is missing or invalid. The message states how to fix it."""


@dataclass
class Candidate:
    """An accepted record or a rejected candidate that can be put into an audit pack."""

    kind: ItemKind
    record_id: str
    run_dir: Path
    dataset: str
    query: str
    image_path: Path
    targets: list[dict[str, Any]]
    task: str | None = None
    split: str | None = None
    modality: str | None = None
    anatomy: str | None = None
    # Image size stated by the record; None for rejected rows without width/height.
    width: int | None = None
    height: int | None = None
    stage: str | None = None
    rule_id: str | None = None
    message: str | None = None

    def field_value(self, name: str) -> str:
        """Return a stratification field as text; a missing value is ``"none"``."""
        value = getattr(self, name)
        return "none" if value is None else str(value)


@dataclass
class RunContents:
    """Sampling candidates of one run folder, with notes on the rows that were skipped."""

    run_dir: Path
    accepted: list[Candidate]
    rejected: list[Candidate]
    records_sha256: str
    rejected_sha256: str | None
    notes: list[str] = field(default_factory=list)


def find_records_file(run_dir: Path) -> Path:
    """Return ``run_dir/records.jsonl`` or raise an error that lists likely run folders."""
    if not run_dir.is_dir():
        raise AuditInputError(f"run folder not found: {run_dir}")
    records_path = run_dir / RECORDS_FILE
    if records_path.is_file():
        return records_path

    nested = sorted(p.parent for p in run_dir.glob(f"*/{RECORDS_FILE}"))
    hint = (
        "pass the dataset folders instead: " + " ".join(str(p) for p in nested)
        if nested
        else f"pass a folder written by 'mgr run' (<out>/<dataset>/) that has {RECORDS_FILE}"
    )
    raise AuditInputError(f"{run_dir}: no {RECORDS_FILE} in this folder; {hint}")


def load_accepted(run_dir: Path) -> list[Candidate]:
    """Load and validate every accepted record of a run folder.

    Raises:
        AuditInputError: If ``records.jsonl`` is missing, a line is not JSON, or a record
            is invalid against ``schemas/record.schema.json``.
    """
    records_path = find_records_file(run_dir)
    validator = Draft202012Validator(load_schema("record"))
    candidates: list[Candidate] = []

    with records_path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditInputError(
                    f"{records_path}:{line_number}: invalid JSON ({exc.msg} at column "
                    f"{exc.colno}); each line must be one record object"
                ) from exc
            error = next(iter(validator.iter_errors(record)), None)
            if error is not None:
                location = "/".join(str(part) for part in error.absolute_path) or "(record)"
                raise AuditInputError(
                    f"{records_path}:{line_number}: record {record.get('id', '?')!r} is invalid "
                    f"against record.schema.json at '{location}': {error.message}; "
                    "re-run 'mgr run' or fix the record"
                )
            candidates.append(_candidate_from_record(record, run_dir))

    logger.debug("read %d accepted records from %s", len(candidates), records_path)
    return candidates


def _candidate_from_record(record: dict[str, Any], run_dir: Path) -> Candidate:
    return Candidate(
        kind="accepted",
        record_id=record["id"],
        run_dir=run_dir,
        dataset=record["dataset"],
        query=record["query"],
        image_path=Path(record["image"]["path"]),
        targets=[dict(target) for target in record["targets"]],
        task=record["task"],
        split=record["split"],
        modality=record["modality"],
        anatomy=record.get("anatomy"),
        width=record["image"]["width"],
        height=record["image"]["height"],
    )


def load_rejected(run_dir: Path, default_dataset: str) -> tuple[list[Candidate], list[str]]:
    """Load the rejected candidates of a run folder that a reviewer can judge.

    Args:
        run_dir: The run folder.
        default_dataset: Dataset name for rows without a ``dataset`` column (a run folder
            contains one dataset).

    Returns:
        The reviewable candidates and notes explaining any that were skipped. A missing
        ``rejected.parquet`` or missing review columns give a note, not an error, because
        runs of older engines do not write them.

    Raises:
        AuditInputError: If a reviewable row has an invalid ``targets_json``.
    """
    rejected_path = run_dir / REJECTED_FILE
    if not rejected_path.is_file():
        return [], [f"{run_dir}: no {REJECTED_FILE}, so no rejected candidates were sampled"]

    table = pl.read_parquet(rejected_path)
    missing = [name for name in REVIEWABLE_REJECTED_COLUMNS if name not in table.columns]
    if missing:
        return [], [
            f"{rejected_path}: columns {', '.join(missing)} are missing, so rejected "
            "candidates cannot be shown to a reviewer and none were sampled; re-run with an "
            "engine that writes them to estimate the false-rejection rate"
        ]
    key_columns = [name for name in ("key", "id") if name in table.columns]
    if not key_columns:
        raise AuditInputError(
            f"{rejected_path}: no 'key' or 'id' column; columns are {', '.join(table.columns)}"
        )
    key_column = key_columns[0]

    reviewable = table.filter(pl.col("query").is_not_null() & (pl.col("query") != ""))
    notes: list[str] = []
    if reviewable.height < table.height:
        notes.append(
            f"{rejected_path}: {table.height - reviewable.height} of {table.height} rejected "
            "rows have no query (rejected before synthesis) and are not sampled"
        )

    candidates = [
        _candidate_from_rejected_row(row, key_column, rejected_path, run_dir, default_dataset)
        for row in reviewable.iter_rows(named=True)
    ]
    logger.debug("read %d reviewable rejected candidates from %s", len(candidates), rejected_path)
    return candidates, notes


def _candidate_from_rejected_row(
    row: dict[str, Any], key_column: str, rejected_path: Path, run_dir: Path, dataset: str
) -> Candidate:
    key = str(row[key_column])
    targets = _parse_targets_json(row["targets_json"], key, rejected_path)

    # Relative image paths are relative to the run folder.
    image_path = Path(str(row["image_path"]))
    if not image_path.is_absolute():
        image_path = run_dir / image_path

    return Candidate(
        kind="rejected",
        record_id=key,
        run_dir=run_dir,
        dataset=str(row.get("dataset") or dataset),
        query=str(row["query"]),
        image_path=image_path,
        targets=targets,
        task=row.get("task"),
        width=row.get("width"),
        height=row.get("height"),
        stage=row.get("stage"),
        rule_id=row.get("rule_id"),
        message=row.get("message"),
    )


def _parse_targets_json(text: Any, key: str, rejected_path: Path) -> list[dict[str, Any]]:
    where = f"{rejected_path}: row {key!r}: targets_json"
    try:
        targets = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as exc:
        raise AuditInputError(f"{where} is not valid JSON ({exc.msg})") from exc
    if not isinstance(targets, list) or not targets:
        raise AuditInputError(
            f"{where} must be a non-empty JSON list of targets, got {str(text)[:80]!r}"
        )
    for index, target in enumerate(targets):
        box = target.get("bbox_xyxy") if isinstance(target, dict) else None
        valid_box = (
            isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
        )
        if not valid_box or not target.get("class"):
            raise AuditInputError(
                f"{where}[{index}] must have 'class' and 'bbox_xyxy' [x0, y0, x1, y1], "
                f"got {target!r}"
            )
    return targets


def load_run(run_dir: Path, *, with_rejected: bool) -> RunContents:
    """Load a run folder's accepted records and, if asked, its reviewable rejected rows."""
    accepted = load_accepted(run_dir)
    records_sha256 = sha256_file(run_dir / RECORDS_FILE)
    rejected: list[Candidate] = []
    notes: list[str] = []
    rejected_path = run_dir / REJECTED_FILE
    rejected_sha256 = sha256_file(rejected_path) if rejected_path.is_file() else None

    if with_rejected:
        datasets = {candidate.dataset for candidate in accepted}
        default_dataset = datasets.pop() if len(datasets) == 1 else run_dir.name
        rejected, notes = load_rejected(run_dir, default_dataset)

    return RunContents(
        run_dir=run_dir,
        accepted=accepted,
        rejected=rejected,
        records_sha256=records_sha256,
        rejected_sha256=rejected_sha256,
        notes=notes,
    )
